"""`posttrain`: post-training a base model into an assistant, beside a control, read through the base SAE."""
