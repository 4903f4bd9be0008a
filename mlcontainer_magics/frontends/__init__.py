"""Front ends: thin adapters over the core. ``magics`` (%%containerize, %container), ``cli``
(`mlcontainer`), ``commands`` (the snapshot verbs both of them run), ``display`` (the status
display) and ``doctor`` (engine and base image set-up). None imports another front end but the
shared ``commands`` and the display the magics show.
"""
