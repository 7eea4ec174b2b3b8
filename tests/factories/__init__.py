"""Builders and fakes shared by test modules (test modules never import each other)."""
