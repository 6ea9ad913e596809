"""Native definitions of the default architectures, importing only torch.

``efficientnet_lite`` is timm's ``tf_efficientnet_lite0`` and ``densenet`` is torchvision's
``densenet121``: the same state-dict keys and the same operations in the same order, so their
checkpoints load unchanged and the outputs are bit-identical (tests/test_native_nets.py). They
spare the start-up the import of timm and torchvision (about 2 s on a small CPU).
"""
