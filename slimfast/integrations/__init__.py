"""Optional integrations with other frameworks; each module imports its framework only when imported itself.

    from slimfast.integrations.lightning import SlimTrainModule   # needs `pip install lightning`
"""
