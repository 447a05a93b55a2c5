"""The commands as functions (train, search, cnn, finetune, predict, cifar, demo) and the pipeline code they
share (``transfer``, ``fitting``). May import every subpackage; only ``cli`` and ``gearfeat`` import it."""
