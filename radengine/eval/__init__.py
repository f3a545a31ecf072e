"""Downstream evaluation: metrics, statistics over seeds, and published-checkpoint import.

The submodules are imported by name (``from radengine.eval.metrics import multilabel_auc``)
so that importing one protocol never pulls in the others.
"""
