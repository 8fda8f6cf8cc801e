"""The fair comparison (experiment=fair_comparison): its sweeper, its runs read back, the analysis
and statistics, and the report (tables, figures). Builds on sweeps.search for the tuning stages."""
