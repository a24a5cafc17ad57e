"""dynrefer's ops as drop-in replacements inside an ordinary PyTorch training loop.

    python examples/ops_in_training_loop.py

A small region classifier: a conv backbone, RoI-Align of the boxes (dynrefer.ops.roi_align instead of
torchvision.ops.roi_align), one attention layer over the pooled cells (dynrefer.ops.attention instead of
F.scaled_dot_product_attention) and a DCNv4 aggregation (dynrefer.ops.dcnv4, which DCNv4 itself only has on CUDA).
Every op takes the same arguments as the op it replaces and is differentiable; swap the imports to compare.
"""
import torch
import torch.nn as nn

from dynrefer.ops import attention, dcnv4, offset_mask_channels, roi_align


class RegionClassifier(nn.Module):
    def __init__(self, channels=32, classes=5, group=4):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(channels, channels, 3, padding=1, stride=2), nn.ReLU())
        self.group = group
        self.offsets = nn.Linear(channels, offset_mask_channels(group, 3))
        nn.init.zeros_(self.offsets.weight)
        nn.init.zeros_(self.offsets.bias)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.head = nn.Linear(channels, classes)

    def forward(self, images, rois):
        feats = self.backbone(images)                                         # [N, C, H/2, W/2]
        pooled = roi_align(feats, rois, output_size=7, spatial_scale=0.5, sampling_ratio=2, aligned=True)
        x = pooled.permute(0, 2, 3, 1)                                        # channels last [K, 7, 7, C]
        x = x + dcnv4(x.contiguous(), self.offsets(x), kernel_size=3, stride=1, padding=1, group=self.group)
        tokens = x.flatten(1, 2)                                              # [K, 49, C]
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        h = 4
        split = lambda t: t.unflatten(-1, (h, -1)).transpose(1, 2)            # noqa: E731  [K, h, 49, C/h]
        y = attention(split(q), split(k), split(v)).transpose(1, 2).flatten(2)
        return self.head(y.mean(1))


def main():
    torch.manual_seed(0)
    model = RegionClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    images = torch.rand(4, 3, 64, 64)
    boxes = torch.rand(16, 2) * 40
    rois = torch.cat([torch.randint(0, 4, (16, 1)).float(), boxes, boxes + 8 + torch.rand(16, 2) * 16], 1)
    labels = torch.randint(0, 5, (16,))
    for step in range(30):
        loss = nn.functional.cross_entropy(model(images, rois), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == 29:
            print(f"step {step:2d}  loss {loss.item():.3f}")


if __name__ == "__main__":
    main()
