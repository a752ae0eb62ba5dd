"""One module per pipeline stage; each holds that stage's assets and asset checks."""
