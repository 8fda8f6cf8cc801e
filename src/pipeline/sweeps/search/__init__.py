"""The Optuna search: Hydra's Sweeper interface over persistent studies (ask/tell on a database),
search spaces in Hydra's sweep syntax, and trials as tickets for jobs. Used by hparams_search and
by the fair comparison's tuning stages."""
