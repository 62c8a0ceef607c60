"""idcscan: batch scoring of invasive ductal carcinoma (IDC) in H&E breast tissue slides."""

__version__ = "0.1.0"
