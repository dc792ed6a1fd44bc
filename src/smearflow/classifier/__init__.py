"""Cell classification: a model folder loaded into a :class:`Classifier`."""

from smearflow.classifier.model_folder import ClassifierConfig, ClassifierFolder, read_model_folder, write_model_folder

__all__ = [
    "ClassifierConfig", "ClassifierFolder", "read_model_folder", "write_model_folder", "Classifier", "default_model_dir",
]


def __getattr__(name):
    # Classifier pulls in Keras; load it only when asked for.
    if name == "Classifier":
        from smearflow.classifier.classifier import Classifier

        return Classifier
    if name == "default_model_dir":
        from smearflow.classifier.classifier import default_model_dir

        return default_model_dir
    raise AttributeError(name)
