"""Fill the diffuse web page's form, press Generate, wait for the images, take a screenshot."""
import sys
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

url, shot = sys.argv[1], sys.argv[2]
opts = webdriver.ChromeOptions()
opts.binary_location = "/usr/bin/chromium"
for a in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--window-size=1000,760"]:
    opts.add_argument(a)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
try:
    driver.get(url)
    wait = WebDriverWait(driver, 30)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#model option")) > 0)
    def fill(id_, value):
        el = driver.find_element(By.ID, id_)
        if el.is_enabled():
            el.clear()
            el.send_keys(str(value))
    Select(driver.find_element(By.ID, "sampler")).select_by_visible_text("dpmpp_2m")
    fill("steps", 20)
    fill("seed", 7)
    fill("n", 8)
    fill("class_label", 3)
    fill("guidance_scale", 2)
    driver.find_element(By.ID, "go").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grid img")) == 8)
    status = driver.find_element(By.ID, "status").text
    assert "8 image(s)" in status, status
    bar = driver.find_element(By.ID, "bar")
    assert bar.get_attribute("value") == bar.get_attribute("max"), "progress bar not full"
    driver.save_screenshot(shot)
    print(f"ok: {status}; screenshot {shot}")
finally:
    driver.quit()
