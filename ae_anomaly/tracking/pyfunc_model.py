"""The logged pyfunc model's code (MLflow models-from-code).

:meth:`~ae_anomaly.tracking.store.Tracker.log_detector` logs this file as the model's
``python_model``, so the logged model holds no pickle: ``mlflow.pyfunc.load_model`` runs
this file, whose :class:`~ae_anomaly.tracking.store.DetectorModel` loads the detector
folder with :func:`~ae_anomaly.detectors.load_detector`. ae-anomaly itself never calls
``mlflow.pyfunc.load_model``: it loads the detector folder directly and checks its hashes.
"""

from mlflow.models import set_model

from ae_anomaly.tracking.store import DetectorModel

set_model(DetectorModel())
