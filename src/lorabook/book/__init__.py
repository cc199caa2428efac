"""Helpers only the book needs beyond the stages: the pitfall
demonstrations, the rule-written assessment, the loop they train with,
the Sphinx extension and the submission files.
"""
