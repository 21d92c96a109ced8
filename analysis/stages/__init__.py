"""The pipeline stages: the only code that reads the compendium's configuration.

Each module's ``produce(ctx)`` is registered in :data:`analysis.pipeline.STAGES`; it turns
``ctx.config`` into engine arguments (:mod:`analysis.stages.params`), calls the engine
(:mod:`analysis.sdm`) and the characterisation library, and writes its files through ``ctx.out``.
"""
