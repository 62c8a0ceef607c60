"""The trainer: IDC patches in, AlexNet/ResNet/DenseNet compared on patient-level splits, ONNX out.

Modules that need torch (models, augment, train, compare, export) import it at their top; the
command-line handlers import them lazily so that `idcscan evaluate` never loads torch.
"""
