import importlib.util
import sys

from tests.deploy.deployment import DOCKER

# docker/requirements.py as an importable module (docker/ is not a package)
_spec = importlib.util.spec_from_file_location("docker_requirements", DOCKER / "requirements.py")
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
sys.modules.setdefault("docker_requirements", _mod)
