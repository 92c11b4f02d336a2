"""The competition's data: layouts, splits, images, the resize rule, transforms, loaders, the demo folder."""
