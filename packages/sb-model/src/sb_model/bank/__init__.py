"""The shared expert bank, one file per job:

==================  ==========================================================================================
``config.py``       :class:`BankConfig`, every option of the bank
``bank.py``         :class:`SharedExpertBank`, the module that composes the pieces below
``features.py``     router input features: per-token flags, causal EMA context features
``router.py``       features -> logits; the EMA-group rule; :class:`RoutingContext` (one forward's inputs)
``routing.py``      logits -> decisions: temperature, cap, Gumbel, live experts, Sinkhorn, top-k
``dispatch.py``     decisions -> expert-sorted rows and back (static shapes, no host sync)
``experts.py``      the expert FFNs on dispatched rows (grouped_mm, blocked bmm, CPU expert-parallel)
``aux_losses.py``   load-balance, entropy, Switch and z losses
``metrics.py``      on-device routing statistics, read with one host copy
``trace.py``        :class:`RoutingTrace`, each layer's per-token choices when a caller asks for them
==================  ==========================================================================================
"""
