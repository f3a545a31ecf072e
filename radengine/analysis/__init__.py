"""Feature-space analysis: representation similarity (CKA) between encoders and layers.

The submodules are imported by name (``from radengine.analysis.cka import linear_cka``).
"""
