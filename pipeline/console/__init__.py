"""The web console at ``/console``: server-rendered pages over the same actions the API runs.

Every page calls the registered IMM actions (``pipeline.api.rpc.ACTIONS``) or the operator
functions the CLI uses (``pipeline.pools``) as the signed-in owner, so the console can show or
change nothing an SDK call by that owner could not.
"""
