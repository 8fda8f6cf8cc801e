"""Populations: K runs of one model shape trained together, as one stacked model, in one process.

Each member is the run it replaces: its own initial weights (drawn from its seed as a single run
draws them), its own data order, its own hyperparameters and optimizer state, and its own MLflow
run. docs/populations.md says how members map to runs and what cannot be batched.

  data.py      each member's minibatches, in the single run's order for its seed
  model.py     the stacked MLP ([K, out, in] weights, `torch.baddbmm`)
  module.py    the LightningModule: steps, epoch sums, divergence, best weights, test
  records.py   each member's metrics into its own run through the population's one writer
  run.py       `train_population`: the training path for K members, top to bottom
  launcher.py  `hydra/launcher=population`: a multirun's batchable jobs as populations
"""
