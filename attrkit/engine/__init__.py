"""The score engine: the formula shared by gradient methods, and the passes that compute it.

    score(t, i) = s_i · Σ_m w_m · < Precond_m(Proj_m(∇ target_t)), q_i · Proj_m(∇ loss_i) >

The life of ``attributor.fit(train).attribute(test)``, one function per step:

1. ``GradientAttributor.fit`` -> :func:`fitting.fit`: check the loader
   (:func:`attrkit.loaders.checked`), take the members (hook ``members()``) and guard their
   weights (:class:`attrkit.fit_guard.FitGuard`), open the feature store
   (:func:`features.open_store`), plan where the features go — in memory or streamed from
   disk, from an estimate and the memory budget (:func:`memory_plan.plan`) — and compute the
   example weights (hook ``example_weights``);
2. per member, :func:`fitting.fit_member`: make and fit its projector (``parts["projector"]
   .make(m)``), assign groups (first member), compute its training features
   (:func:`features.example_features`: gradients -> :func:`sides.gradients`, projected ->
   :func:`sides.project`, checked, stored), make and fit its solver;
3. the column scale (hook ``column_scale``), then :class:`state.Fit` is the fitted state;
4. ``GradientAttributor.attribute`` -> :func:`scoring.attribute`: check the model is unchanged,
   then per test batch :func:`scoring.queries` (:func:`sides.gradients` then
   :func:`sides.query`: solve, project, normalise; behind a low-rank solve ``U diag(w) Uᵀ``,
   :mod:`low_rank`, the coefficients ``w ⊙ Uᵀ g`` when cheaper) and :func:`tiles.score_block`
   (``Σ_m w_m q_m Φ_mᵀ`` tile by tile, :meth:`state.FittedMember.products`), gathered over
   ranks and checked finite.

``top_k`` (:func:`scoring.top_k`) and ``self_influence``
(:func:`self_influence.self_influence`) reuse the same sides. ``save`` and ``restore``
(:mod:`persist`) write the :class:`state.Fit` to a folder and read it back in another process.
"""

from attrkit.engine.attributor import GradientAttributor
from attrkit.engine.memory_plan import MemoryPlan
from attrkit.engine.state import Fit, FittedMember

__all__ = ["Fit", "FittedMember", "GradientAttributor", "MemoryPlan"]
