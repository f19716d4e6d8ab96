"""Learning: U-Net models, training (pretrain, transfer, baselines), evaluation, metrics, OOD descriptors."""
