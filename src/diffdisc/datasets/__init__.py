"""The embedded world's data: Fashion-MNIST, coloured scenes with captions, probe sets and their export as files."""
