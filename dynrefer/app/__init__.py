"""dynrefer.app — the application layer: the workflows the ``dynrefer`` command runs, composed from the layers
below it (model, data, train, eval) and usable from Python as they are.

    bundle         model bundles (save, load, rebuild the model), data-folder vocabularies
    schemes        train / evaluate DynRefer under one view scheme; ``dynrefer train`` / ``eval`` on a data folder
    demo           the main job: a miniature Table 7 on the synthetic benchmark (``dynrefer demo``)
    describe       describe boxes of an image file and plot the chosen views (``dynrefer describe``)
    referring      instruction fine-tuning on region conversations, chat models (``dynrefer chat``)
    densecap       dense captioning with a model over detected or ground-truth boxes (``dynrefer eval --detections``)
    ferret_bench   Ferret-Bench questions in, answers out (``dynrefer ferret-bench``)
    bench          RoI-Align on DynRefer's multi-view shapes against torchvision (``dynrefer bench``)

Imports point down only: this package uses ``dynrefer.model``, ``dynrefer.data``, ``dynrefer.train``,
``dynrefer.eval``, ``dynrefer.views`` and ``dynrefer.ops``; only the command line (``dynrefer.cli``) and the LAVIS
registration (``dynrefer.lavis``) import it. Errors a user can fix are :class:`UserError` (the command prints them
on one line and exits with status 2).
"""
from dynrefer.app.errors import UserError

__all__ = ["UserError"]
