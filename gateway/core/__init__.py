"""Pure cores of the gateway's analyses: values in, values out."""
