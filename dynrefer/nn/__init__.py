"""dynrefer.nn: PyTorch layers of the DynRefer model on dynrefer's ops (through one backend switch)."""
from dynrefer.nn.align import DeformableAlign
from dynrefer.nn.attention import FusedQKVAttention, InProjAttention, SeparateQKVAttention
from dynrefer.nn.backend import attention, dcnv4, dcnv4_reference, get_backend, roi_align, set_backend, use_backend

__all__ = ["DeformableAlign", "FusedQKVAttention", "InProjAttention", "SeparateQKVAttention", "attention", "dcnv4",
           "dcnv4_reference", "get_backend", "roi_align", "set_backend", "use_backend"]
