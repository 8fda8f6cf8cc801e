"""The MLP, its epoch metrics, and the LightningModule that trains it."""
