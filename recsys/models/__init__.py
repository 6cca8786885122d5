"""Model zoo: next-item (SASRec, MQSA-TED) and long-sequence CTR (DIN, TWIN, DARE, SDIM)."""
