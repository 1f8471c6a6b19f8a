"""The engine: one cell. Its stage graph and run loop (pipeline), every check of its input before a model loads
(validation), and the check that no evaluation question is in its training data (leakage)."""
