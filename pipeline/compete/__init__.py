"""What competing adds: out-of-fold scores, blends, pseudo-labels, the offline bundle."""
