"""Neural-network building blocks: layers, networks, autoencoders, augmentations, Otsu's threshold,
k-means, device constants and the shared pieces of a training step."""
