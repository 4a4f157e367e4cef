"""The lifecycle as a whole: recipes (stages in order) and the HTML report that compares them."""
