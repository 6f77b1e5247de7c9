"""The embedded world: the tiny Gemma-3 models, the synthetic sample data and its knowledge table,
and a random-initialised model of MedGemma's real shape. Everything here is built locally, offline."""
