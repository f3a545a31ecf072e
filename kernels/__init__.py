"""Triton kernels, installed as ``radengine.kernels``. Import a kernel module only after
checking that triton imports (radengine.ops does); under TRITON_INTERPRET=1 they run on
CPU tensors for testing."""
