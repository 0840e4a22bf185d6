"""Integrations of qflgym controllers and federations with federated-learning frameworks (Flower)."""
