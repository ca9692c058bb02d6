def add(a, b):
    return a + b


def greet(greeting, name):
    return greeting + name
