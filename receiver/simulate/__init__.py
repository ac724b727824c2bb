"""``receiver simulate``: a stand-in for the Huawei platform, to see the whole flow without an account.

``scenario`` builds what the platform would send (pure, testable without a network), ``push``
sends it to a running receiver at a chosen rate, ``command`` is the command line.
"""
