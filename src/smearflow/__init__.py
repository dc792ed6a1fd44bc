"""smearflow: blood-smear images in, white-cell differential counts out.

Importing the package is cheap on purpose: TensorFlow, OpenCV and the database
layer load only inside the functions and commands that need them.
"""

__version__ = "0.1.0"

WBC_CLASSES = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)
"""The PBC class-folder names, in the order every shipped model uses."""
