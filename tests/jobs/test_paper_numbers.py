"""The paper numbers the service shows (METHOD.md §5): sources, top-5 as fields, comparators, sparsity labels."""
import ast
from pathlib import Path

from jobs import results


def test_resnet50_appears_only_under_the_journal_recipe():
    assert ("resnet50", "aaai") not in results.PAPER_SIBNN_IMAGENET
    r50 = results.PAPER_SIBNN_IMAGENET[("resnet50", "tnnls")]
    assert r50["top1"] == 68.3 and "TNNLS" in r50["source"] and "no ResNet-50" in r50["source"]


def test_top5_values_are_fields_and_no_number_hides_in_a_source_string():
    p = results.PAPER_SIBNN_IMAGENET
    assert (p[("alexnet", "aaai")]["top5"], p[("alexnet", "aaai")]["top5_approx"]) == (75.0, True)
    assert (p[("resnet18", "aaai")]["top5"], p[("resnet18", "aaai")]["top5_approx"]) == (82.0, True)
    assert (p[("resnet18", "tnnls")]["top5"], p[("resnet18", "tnnls")]["top5_approx"]) == (83.7, False)
    for key, row in p.items():
        assert set(row) == {"top1", "top5", "top5_approx", "source"}, key
        assert "≈" not in row["source"], key


def test_reactnet_is_quoted_from_its_paper():
    (label, value), = [(k, v) for k, v in results.PUBLISHED_COMPARATORS["resnet18"].items() if "ReActNet" in k]
    assert value == 65.5 and "65.9" in label and "README" in label


def test_fp_sparsity_is_labelled_as_relu_zeros():
    assert "ReLU" in results.SPARSITY_MEANING["fp"] and "binary" in results.SPARSITY_MEANING["sibnn"]
    from sibnn.quant import BINARIZERS  # the service must cover every binarizer (imported here, in the test only)
    assert set(results.SPARSITY_MEANING) == set(BINARIZERS)


def test_results_module_imports_no_torch_mlflow_or_web_framework():
    """The tables, statistics and claims are plain data: jobs.results imports no torch, MLflow, Ray or FastAPI (of
    sibnn only the torch-free catalog), so the API, the CLI and the MLflow report can all call it."""
    tree = ast.parse(Path(results.__file__).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert names and not {m for m in names if m.split(".")[0] in {"torch", "mlflow", "ray", "fastapi"}}
    assert {m for m in names if m.startswith("sibnn")} == {"sibnn.catalog"}
