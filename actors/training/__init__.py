"""Finetuning: the hyperparameters (`config`), the SFT rows and backdoor mixing (`data`),
rows as tokens and loss masks (`encode`), one DeepSpeed rank's step loop, callable without
Ray (`loop`), and the ranks as Ray actors placed together (`ranks`)."""
