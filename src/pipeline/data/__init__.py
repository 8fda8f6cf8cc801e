"""The data: sources read into arrays, minibatches cut by index, the Lightning data module."""
