"""The kernel side as the controller sees it: what is attached where."""
