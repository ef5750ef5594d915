"""WebDINOObjective: DINO (CLS, cross-view) + iBOT (masked patches) + KoLeo, with the term counts of DINOv2.

Inputs, all by keyword (B images per rank, n_g global and n_l local crops, K prototypes, M masked patches on this
rank). Every head output is a fastvit.models.heads.PrototypeLogits (L2-normalised features + the head's
prototypes g * normalize(V)): the one loss path is factored, the [rows, K] logits are never built (teacher
targets: fastvit.ops.sinkhorn / prototype_targets; cross-entropies: fastvit.ops.prototype_cross_entropy, fused
Triton kernels on CUDA).
    student_global   features [n_g, B, D] of the student DINO head on the global crops
    student_local    features [n_l, B, D] of the local crops, or None when n_l = 0
    teacher_global   features [n_g, B, D] of the teacher DINO head on the global crops
    student_patches  features [M, D'] of the student iBOT head on the masked patches (masks[masks] order), or None
    teacher_patches  features [M, D'] of the teacher iBOT head on the same patches
    masks            [n_g * B, N] bool iBOT masks, rows crop-major (crop 0's B images, then crop 1's)
    mask_weights     [M] float32 1 / (masked patches of its image) per masked patch (the loader's), or None: then
                     computed from masks (a host sync: the count M is read)
    student_cls      [n_g, B, D''] student CLS features of the global crops for KoLeo (normalised inside), or None
    teacher_temp     float, the scheduled teacher temperature

Terms (unweighted) and total:
    n_terms     = n_g * n_l + (n_g - 1) * n_g
    dino_global = sum_{i != j} CE(student global i, teacher j) / n_terms      (cross-view pairs only)
    dino_local  = sum_{i, j} CE(student local i, teacher global j) / n_terms
    ibot        = sum_m w_m CE(student patch m, teacher patch m) / (n_g * B) * 2 / n_g,  w_m = 1 / masked in its image
    koleo       = sum over global crops of koleo_loss(student_cls[i])
    total       = dino_weight * (dino_global + dino_local) + ibot_weight * ibot + koleo_weight * koleo
CE is the mean over the B rows of -sum_k p log_softmax(s / student_temp). Teacher targets: Sinkhorn-Knopp over the
n_g * B CLS rows (resp. the M masked patches) of all ranks, or softmax centering with EMA centers updated after use.
backend ("auto", "triton", "torch") picks the kernels of the targets and the cross-entropies alike.

Example (training loop):
    objective = WebDINOObjective(n_global=2, n_local=8)            # centering="sinkhorn"
    sg = dino_head.prototype_logits(s_cls_global)                   # features [2, B, 384]
    sl = dino_head.prototype_logits(s_cls_local)                    # features [8, B, 384]
    tg = teacher_dino_head.prototype_logits(t_cls_global)           # under torch.no_grad()
    sp = ibot_head.prototype_logits(s_patch_tokens[masks])          # features [M, 256]
    tp = teacher_ibot_head.prototype_logits(t_patch_tokens[masks])
    losses = objective(
        student_global=sg, student_local=sl, teacher_global=tg, student_patches=sp, teacher_patches=tp,
        masks=masks, student_cls=s_cls_global, teacher_temp=teacher_temp_schedule(step, 37500),
    )
    losses["total"].backward()
"""

import torch
import torch.nn as nn

from fastvit.models.heads import PrototypeLogits
from fastvit.objectives.centering import Centering
from fastvit.objectives.koleo import koleo_loss
from fastvit.objectives.losses import ibot_masks_weight
from fastvit.ops.prototype_cross_entropy import BACKENDS, prototype_cross_entropy
from fastvit.ops.prototype_targets import DEFAULT_CHUNK, softmax_center_targets
from fastvit.ops.sinkhorn import sinkhorn_knopp


class WebDINOObjective(nn.Module):
    """DINO + iBOT + KoLeo losses of Web-DINO; returns {dino_global, dino_local, ibot, koleo, total}."""

    def __init__(
        self,
        *,
        n_global=2,
        n_local=8,
        student_temp=0.1,
        dino_weight=1.0,
        ibot_weight=1.0,
        koleo_weight=0.1,
        centering="sinkhorn",
        sinkhorn_iters=3,
        center_momentum=0.9,
        dino_out_dim=131072,
        ibot_out_dim=131072,
        chunk=DEFAULT_CHUNK,
        backend="auto",
        group=None,
    ):
        super().__init__()
        if n_global < 2 or n_local < 0:
            raise ValueError(f"WebDINOObjective needs n_global >= 2 and n_local >= 0, got {n_global}, {n_local}")
        if centering not in ("sinkhorn", "softmax"):
            raise ValueError(f"centering must be 'sinkhorn' or 'softmax', got {centering!r}")
        if backend not in BACKENDS:
            raise ValueError(f"WebDINOObjective backend must be one of {BACKENDS}, got {backend!r}")
        self.n_global, self.n_local, self.student_temp = n_global, n_local, student_temp
        self.weights = {"dino": dino_weight, "ibot": ibot_weight, "koleo": koleo_weight}
        self.centering, self.sinkhorn_iters, self.chunk, self.backend, self.group = (
            centering,
            sinkhorn_iters,
            chunk,
            backend,
            group,
        )
        if centering == "softmax":
            self.dino_center = Centering(dino_out_dim, center_momentum)
            self.ibot_center = Centering(ibot_out_dim, center_momentum)

    @property
    def n_terms(self):
        return self.n_global * self.n_local + (self.n_global - 1) * self.n_global

    def forward(
        self,
        *,
        student_global,
        teacher_global,
        teacher_temp,
        student_local=None,
        student_patches=None,
        teacher_patches=None,
        masks=None,
        mask_weights=None,
        student_cls=None,
    ):
        n_g = self.n_global
        heads = (student_global, student_local, teacher_global, student_patches, teacher_patches)
        if not all(h is None or isinstance(h, PrototypeLogits) for h in heads):
            kinds = [type(h).__name__ for h in heads]
            raise ValueError(f"WebDINOObjective takes PrototypeLogits (features + prototypes) per head, got {kinds}")
        if student_global.shape[0] != n_g or teacher_global.shape[0] != n_g:
            raise ValueError(f"expected {n_g} global crops, got {student_global.shape[0]} / {teacher_global.shape[0]}")
        n_l = 0 if student_local is None else student_local.shape[0]
        if n_l != self.n_local:
            raise ValueError(f"expected {self.n_local} local crops, got {n_l}")
        if (student_patches is None) != (teacher_patches is None):
            raise ValueError("student and teacher iBOT outputs must both be given or both be None")
        if student_patches is not None:
            mask_weights = ibot_masks_weight(masks) if mask_weights is None else mask_weights
            M = mask_weights.shape[0]
            if student_patches.shape[0] != M or teacher_patches.shape[0] != M:
                rows = f"{student_patches.shape[0]} / {teacher_patches.shape[0]}"
                raise ValueError(f"masks select {M} patches but the iBOT outputs hold {rows} rows")
        dino, ibot = self.teacher_targets(
            teacher_global=teacher_global, teacher_patches=teacher_patches, teacher_temp=teacher_temp
        )
        return self.student_losses(
            student_global=student_global,
            student_local=student_local,
            dino_targets=dino,
            student_patches=student_patches,
            ibot_targets=ibot,
            masks=masks,
            mask_weights=mask_weights,
            student_cls=student_cls,
        )

    def _combine(self, dino_global, dino_local, ibot, student_cls):
        zero = dino_global.new_zeros(())
        ibot = zero if ibot is None else ibot
        koleo = zero if student_cls is None else sum(koleo_loss(student_cls[i]) for i in range(self.n_global))
        w = self.weights
        total = w["dino"] * (dino_global + dino_local) + w["ibot"] * ibot + w["koleo"] * koleo
        return {"dino_global": dino_global, "dino_local": dino_local, "ibot": ibot, "koleo": koleo, "total": total}

    # ---- the same losses in two phases: teacher targets of a whole batch, then student losses of a part of it

    def teacher_targets(self, *, teacher_global, teacher_temp, teacher_patches=None):
        """TeacherTargets of the DINO head (rows [n_g, B]) and of the iBOT head (rows [1, M], or None) from
        PrototypeLogits [n_g, B, D] / [M, D]; Sinkhorn over all their rows (and ranks), or softmax centering
        (whose centers are updated here). Pipelined training computes them once per step, then calls
        student_losses on each microbatch with the targets' columns of its images."""
        if not isinstance(teacher_global, PrototypeLogits):
            raise ValueError("teacher_targets takes PrototypeLogits (features + prototypes), not logits")
        dino = self._factored_targets(teacher_global, teacher_temp, "dino")
        if teacher_patches is None:
            return dino, None
        patches = PrototypeLogits(teacher_patches.features[None], teacher_patches.prototypes)
        return dino, self._factored_targets(patches, teacher_temp, "ibot")

    def student_losses(
        self,
        *,
        student_global,
        dino_targets,
        student_local=None,
        student_patches=None,
        ibot_targets=None,
        masks=None,
        mask_weights=None,
        student_cls=None,
    ):
        """The loss dict of forward() for student PrototypeLogits against precomputed TeacherTargets:
        dino_targets rows [n_g, B] (the student's B images), ibot_targets rows [1, M] (masks' M patches)."""
        dino_global, dino_local = self._dino_from_targets(student_global, student_local, dino_targets)
        ibot = None
        if student_patches is not None:
            ibot = self._ibot_from_targets(student_patches, ibot_targets, masks, mask_weights)
        return self._combine(dino_global, dino_local, ibot, student_cls)

    def _dino_from_targets(self, sg, sl, targets):
        n_g = self.n_global
        xs = sg.features if sl is None else torch.cat([sg.features, sl.features])  # [n_g + n_l, B, D]
        L = prototype_cross_entropy(
            xs, sg.prototypes, targets, self.student_temp, chunk=self.chunk, backend=self.backend
        )  # [n_s, n_g]
        cross_view = 1.0 - torch.eye(n_g, device=L.device)
        return (L[:n_g] * cross_view).sum() / self.n_terms, L[n_g:].sum() / self.n_terms

    def _ibot_from_targets(self, sp, targets, masks, mask_weights=None):
        mask_weights = ibot_masks_weight(masks) if mask_weights is None else mask_weights
        n_images, M = masks.shape[0], mask_weights.shape[0]
        if sp.features.shape[0] != M or targets.features.shape[1] != M:
            raise ValueError(
                f"masks select {M} patches but the iBOT rows are {sp.features.shape[0]} / {targets.features.shape[1]}"
            )
        row_w = mask_weights / n_images
        L = prototype_cross_entropy(
            sp.features[None], sp.prototypes, targets, self.student_temp, row_w, chunk=self.chunk, backend=self.backend
        )  # [1, 1]
        return L[0, 0] * 2.0 / self.n_global

    def _factored_targets(self, t, teacher_temp, head):
        """TeacherTargets for PrototypeLogits t with features [T, B, D] (rows of all T crops centred together)."""
        if self.centering == "sinkhorn":
            return sinkhorn_knopp(
                t.features,
                t.prototypes,
                teacher_temp,
                self.sinkhorn_iters,
                group=self.group,
                chunk=self.chunk,
                backend=self.backend,
            )
        center = getattr(self, f"{head}_center")
        targets = softmax_center_targets(
            t.features, t.prototypes, center.center, teacher_temp, chunk=self.chunk, backend=self.backend
        )
        center.update_factored(t.features, t.prototypes, self.group)
        return targets
