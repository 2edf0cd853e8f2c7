"""A run of SuperSimpleNet: the units it covers, the training loop of one unit, inference and
evaluation over a test set, and the files each unit writes. Entry points call this layer; it
stands on model/ and datamodules/, which stand on common/."""
