"""The operator's tools, outside the API package: the ``sibnn`` command line (``console.cli``), its HTTP client
(``console.client``) and the embedded single-box stack (``console.stack``: a Ray head, MLflow and the API as child
processes). From the service it imports only ``service.schemas``, the answers' shapes (an import-linter contract)."""
