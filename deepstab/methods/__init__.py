"""The clustering methods: DECS, DEC/IDEC/DCN, BRB and LFSS."""
