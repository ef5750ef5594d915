"""WebDINOObjective: DINO (CLS, cross-view) + iBOT (masked patches) + KoLeo, with the term counts of DINOv2.

Inputs (B images per rank, n_g global and n_l local crops, K prototypes, M masked patches on this rank). Each head
output is either a logits tensor (plain path) or a fastvit.models.heads.PrototypeLogits (features + prototypes:
chunked path, the [rows, K] logits are never built); a student/teacher pair of one head must be of the same kind.
    student_global   [n_g, B, K] student DINO-head logits of the global crops (or PrototypeLogits [n_g, B, D])
    student_local    [n_l, B, K] the same for the local crops, or None when n_l = 0
    teacher_global   [n_g, B, K] teacher DINO-head logits of the global crops
    student_patches  [M, K] student iBOT-head logits of the masked patches, in masks[masks] order, or None (no iBOT)
    teacher_patches  [M, K] teacher iBOT-head logits of the same patches
    masks            [n_g * B, N] bool iBOT masks, rows crop-major (crop 0's B images, then crop 1's)
    student_cls      [n_g, B, D'] student CLS features of the global crops for KoLeo (normalised inside), or None
    teacher_temp     float, the scheduled teacher temperature

Terms (unweighted) and total:
    n_terms     = n_g * n_l + (n_g - 1) * n_g
    dino_global = sum_{i != j} CE(student global i, teacher j) / n_terms      (cross-view pairs only)
    dino_local  = sum_{i, j} CE(student local i, teacher global j) / n_terms
    ibot        = ibot_patch_loss(..., n_images = n_g * B) * 2 / n_g
    koleo       = sum over global crops of koleo_loss(student_cls[i])
    total       = dino_weight * (dino_global + dino_local) + ibot_weight * ibot + koleo_weight * koleo
CE is the mean over the B rows of -sum_k p log_softmax(s / student_temp). Teacher targets: Sinkhorn-Knopp over the
n_g * B CLS rows (resp. the M masked patches) of all ranks, or softmax centering with EMA centers updated after use.

Example (training loop):
    objective = WebDINOObjective(n_global=2, n_local=8)            # centering="sinkhorn"
    sg = dino_head.prototype_logits(s_cls_global)                   # features [2, B, 384]
    sl = dino_head.prototype_logits(s_cls_local)                    # features [8, B, 384]
    tg = teacher_dino_head.prototype_logits(t_cls_global)           # under torch.no_grad()
    sp = ibot_head.prototype_logits(s_patch_tokens[masks])          # features [M, 256]
    tp = teacher_ibot_head.prototype_logits(t_patch_tokens[masks])
    losses = objective(sg, sl, tg, sp, tp, masks, s_cls_global, teacher_temp=teacher_temp_schedule(step, 37500))
    losses["total"].backward()
"""

import torch
import torch.nn as nn

from fastvit.models.heads import PrototypeLogits
from fastvit.objectives.centering import Centering, sinkhorn_knopp, softmax_center
from fastvit.objectives.koleo import koleo_loss
from fastvit.objectives.losses import dino_cross_entropy, ibot_masks_weight, ibot_patch_loss
from fastvit.ops.prototype_cross_entropy import prototype_cross_entropy
from fastvit.ops.prototype_targets import DEFAULT_CHUNK, sinkhorn_targets, softmax_center_targets


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
        student_global,
        student_local,
        teacher_global,
        student_patches,
        teacher_patches,
        masks,
        student_cls,
        teacher_temp,
    ):
        n_g = self.n_global
        if student_global.shape[0] != n_g or teacher_global.shape[0] != n_g:
            raise ValueError(f"expected {n_g} global crops, got {student_global.shape[0]} / {teacher_global.shape[0]}")
        n_l = 0 if student_local is None else student_local.shape[0]
        if n_l != self.n_local:
            raise ValueError(f"expected {self.n_local} local crops, got {n_l}")
        dino_global, dino_local = self._dino(student_global, student_local, teacher_global, teacher_temp)
        ibot = None if student_patches is None else self._ibot(student_patches, teacher_patches, masks, teacher_temp)
        return self._combine(dino_global, dino_local, ibot, student_cls)

    def _combine(self, dino_global, dino_local, ibot, student_cls):
        zero = dino_global.new_zeros(())
        ibot = zero if ibot is None else ibot
        koleo = zero if student_cls is None else sum(koleo_loss(student_cls[i]) for i in range(self.n_global))
        w = self.weights
        total = w["dino"] * (dino_global + dino_local) + w["ibot"] * ibot + w["koleo"] * koleo
        return {"dino_global": dino_global, "dino_local": dino_local, "ibot": ibot, "koleo": koleo, "total": total}

    # ---- the same losses in two phases: teacher targets of a whole batch, then student losses of a part of it

    def teacher_targets(self, teacher_global, teacher_patches, teacher_temp):
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
        self, student_global, student_local, dino_targets, student_patches, ibot_targets, masks, student_cls
    ):
        """The loss dict of forward() for student PrototypeLogits against precomputed TeacherTargets:
        dino_targets rows [n_g, B] (the student's B images), ibot_targets rows [1, M] (masks' M patches)."""
        dino_global, dino_local = self._dino_from_targets(student_global, student_local, dino_targets)
        ibot = None if student_patches is None else self._ibot_from_targets(student_patches, ibot_targets, masks)
        return self._combine(dino_global, dino_local, ibot, student_cls)

    def _dino(self, sg, sl, tg, teacher_temp):
        kinds = {isinstance(x, PrototypeLogits) for x in (sg, tg) + (() if sl is None else (sl,))}
        if len(kinds) != 1:
            raise ValueError("student and teacher DINO outputs must all be logits tensors or all PrototypeLogits")
        if kinds == {True}:
            return self._dino_chunked(sg, sl, tg, teacher_temp)
        n_g, B, K = tg.shape
        p = self._targets(tg.reshape(n_g * B, K), teacher_temp, "dino", None).view(n_g, B, K)
        p_all = p.sum(0)  # CE is linear in p: sum_j CE(s, p_j) = CE(s, sum_j p_j)
        ce = lambda s, t: dino_cross_entropy(s, t, self.student_temp, backend=self.backend)
        dino_global = sum(ce(sg[i], sum(p[j] for j in range(n_g) if j != i)) for i in range(n_g))
        dino_local = sum(ce(sl[i], p_all) for i in range(sl.shape[0])) if sl is not None else p.new_zeros(())
        return dino_global / self.n_terms, dino_local / self.n_terms

    def _dino_chunked(self, sg, sl, tg, teacher_temp):
        return self._dino_from_targets(sg, sl, self._factored_targets(tg, teacher_temp, "dino"))

    def _dino_from_targets(self, sg, sl, targets):
        n_g = self.n_global
        xs = sg.features if sl is None else torch.cat([sg.features, sl.features])  # [n_g + n_l, B, D]
        L = prototype_cross_entropy(xs, sg.prototypes, targets, self.student_temp, chunk=self.chunk)  # [n_s, n_g]
        cross_view = 1.0 - torch.eye(n_g, device=L.device)
        return (L[:n_g] * cross_view).sum() / self.n_terms, L[n_g:].sum() / self.n_terms

    def _ibot(self, sp, tp, masks, teacher_temp):
        if isinstance(sp, PrototypeLogits) != isinstance(tp, PrototypeLogits):
            raise ValueError("student and teacher iBOT outputs must both be logits tensors or both PrototypeLogits")
        n_images, M = masks.shape[0], int(masks.sum())
        if sp.shape[0] != M or tp.shape[0] != M:
            raise ValueError(f"masks select {M} patches but the iBOT outputs hold {sp.shape[0]} / {tp.shape[0]} rows")
        if isinstance(sp, PrototypeLogits):
            targets = self._factored_targets(PrototypeLogits(tp.features[None], tp.prototypes), teacher_temp, "ibot")
            return self._ibot_from_targets(sp, targets, masks)
        p = self._targets(tp, teacher_temp, "ibot", None)
        weight = ibot_masks_weight(masks)
        return ibot_patch_loss(sp, p, weight, n_images, self.student_temp, backend=self.backend) * 2.0 / self.n_global

    def _ibot_from_targets(self, sp, targets, masks):
        n_images, M = masks.shape[0], int(masks.sum())
        if sp.features.shape[0] != M or targets.features.shape[1] != M:
            raise ValueError(
                f"masks select {M} patches but the iBOT rows are {sp.features.shape[0]} / {targets.features.shape[1]}"
            )
        row_w = ibot_masks_weight(masks) / n_images
        L = prototype_cross_entropy(
            sp.features[None], sp.prototypes, targets, self.student_temp, row_w, chunk=self.chunk
        )  # [1, 1]
        return L[0, 0] * 2.0 / self.n_global

    def _targets(self, t_RK, teacher_temp, head, n_rows):
        """Teacher probabilities [R, K] from logits: Sinkhorn over all ranks' rows, or softmax centering."""
        if self.centering == "sinkhorn":
            return sinkhorn_knopp(t_RK, teacher_temp, self.sinkhorn_iters, n_rows=n_rows, group=self.group)
        center = getattr(self, f"{head}_center")
        p = softmax_center(t_RK, center.center, teacher_temp)
        center.update(t_RK, self.group)
        return p

    def _factored_targets(self, t, teacher_temp, head):
        """TeacherTargets for PrototypeLogits t with features [T, B, D] (rows of all T crops centred together)."""
        if self.centering == "sinkhorn":
            return sinkhorn_targets(
                t.features, t.prototypes, teacher_temp, self.sinkhorn_iters, group=self.group, chunk=self.chunk
            )
        center = getattr(self, f"{head}_center")
        targets = softmax_center_targets(t.features, t.prototypes, center.center, teacher_temp, chunk=self.chunk)
        center.update_factored(t.features, t.prototypes, self.group)
        return targets
