"""Training and evaluation runs of SuperSimpleNet: the units a run covers, the training loop of one
unit, inference and metrics over a test set, the files each unit writes, preemption-safe resume.
Entry points call this layer; it stands on deploy/ (calibration after training), model/ and
datamodules/, which stand on common/."""
