"""Fitting: SGDR fits, regularisers, what the training stages share."""
