"""Model architectures of the settings: ``mlp`` (the MNIST MLP) and ``gpt`` (a small nanoGPT)."""
