def leaf(x):
    return x + 1


def middle(x):
    y = leaf(x)
    return leaf(y)


def top():
    a = middle(1)
    b = leaf(a)
    return b


top()
